"""The contract between a model folder and the tools, written once: what the tools call, and what they do when
an optional hook is not there.

A model folder holds dygraph_model.py, whose class DygraphModel gives the hooks of ModelHooks (PaddleRec's
names), and the readers its config names: runner.train_reader_path (TrainReaderModule) and
runner.infer_reader_path (TestReaderModule). The tools hold a folder's DygraphModel as a Model: the hooks it
must give, checked when it is loaded (a missing one, or one that cannot take the tools' arguments, is a
ConfigError naming the file), and the optional ones with their defaults, so no tool asks a model what it has.
docs/architecture.md draws it; tests/test_contract.py checks every model folder of the project against it.
"""
import inspect
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple, runtime_checkable

from ..errors import ConfigError

Batch = Mapping[str, Any]  # NumPy arrays by name (label, aid, uid, static, dynamic, lengths, ad), a row each


class ModelHooks(Protocol):
    """What every DygraphModel gives. config is the run's config as its hooks see it, read-only (config.py:
    with_data): the sections runner and hyper_parameters, plus what the tools learnt from the data, data_schema
    (the data's schema.json: the field layout and vocabulary maxima) and train_campaigns (the sorted aids of the
    training campaigns)."""

    HYPER_PARAMETERS: Mapping[str, Tuple[str, Any, str]]
    """key -> (kind, default or "required", meaning) of every hyper_parameters key the folder reads; config.py's
    validate checks a config against it (kind_check lists the kinds)."""

    def create_model(self, config: Mapping) -> Any:
        """The network (a paddle.nn.Layer): net(feeds) gives a click probability per row."""

    def create_feeds(self, batch: Batch) -> Dict[str, Any]:
        """The batch as the network's input tensors."""

    def create_loss(self, pred: Any, label: Any) -> Any:
        """The loss of predictions against labels (a scalar tensor)."""

    def create_optimizer(self, net: Any, config: Mapping, learning_rate: Optional[float] = None) -> Any:
        """The optimiser over net's parameters: the outer step's, or fine-tuning's at learning_rate."""

    def train_forward(self, net: Any, meta_batch: List[Tuple[Batch, Batch]], config: Mapping
                      ) -> Tuple[Any, Dict[str, float]]:
        """(loss, metrics) of one meta-batch [(support, query), ...]: the tools back-propagate the loss and step;
        every metric is averaged over the epoch, printed and drawn (train/<name>). Needed only by a model that
        trains across campaigns (OptionalHooks.trains_across_campaigns)."""

    def infer_train_forward(self, net: Any, batch: Batch, config: Mapping) -> Tuple[Any, Dict[str, float]]:
        """(loss, metrics) of one fine-tuning batch of a test campaign's seeds."""

    def infer_forward(self, net: Any, batch: Batch, config: Mapping) -> Any:
        """The click probability of every row of a batch, a NumPy array [B]."""


class OptionalHooks(Protocol):
    """What a DygraphModel may give, and the default without it."""

    trains_across_campaigns: bool
    """False: nothing is trained across campaigns; the trainer saves the seeded initialisation as epoch 0 (the
    one-stage baselines). Default True."""

    def fit_campaign(self, net: Any, seeds: Batch, config: Mapping) -> None:
        """Fit net to a test campaign's seeds by the model's own rule (the look-alike baselines). Default:
        fine-tuning, runner.infer_train_epoch passes of create_optimizer at local_test_learning_rate over
        infer_train_forward (tools/utils/run/campaign.py)."""

    def campaign_net(self, net: Any, seeds: Batch, reference: Batch, config: Mapping) -> Any:
        """The network that scores a campaign, from net fitted to its seeds and reference users (rows of users
        unrelated to it, with its ad ids); MetaHeac adds a wide part. Default: net itself."""


class Network(Protocol):
    """What the tools read of a network beyond paddle.nn.Layer, all optional."""

    grad_rows: Mapping[str, Any]
    """Left by train_forward: {parameter name: sorted row ids} outside which that parameter's gradient is zero
    (MetaHeac's embedding tables); a run across processes sums only those rows (collectives.py), then names
    every rank's rows there. Without it, every row is summed."""


@runtime_checkable
class TrainReader(Protocol):
    """reader_train.RecDataset(config, data_dir): the meta-batches of one epoch after another."""

    campaigns: Any  # the sorted aids of the training campaigns that are drawn
    valid_campaigns: Any  # the sorted aids of those held out as validation campaigns (runner.valid_campaigns)
    table: Mapping[str, Any]  # the training rows drawn from; the background users are sampled from them
    step: int  # meta-batches of the current epoch drawn so far

    def __len__(self) -> int:
        """Meta-batches per epoch."""

    def __iter__(self) -> Iterator[List[Tuple[Batch, Batch]]]:
        """The epoch's remaining meta-batches [(support, query), ...]; afterwards the next epoch is set."""

    def set_epoch(self, epoch: int, state: Optional[Mapping] = None) -> None:
        """Draw epoch's meta-batches next: from its start, or from state (a state() of that epoch)."""

    def state(self) -> Mapping:
        """The position in the epoch, JSON-able: a step checkpoint keeps it, so a resumed run draws the same."""


@runtime_checkable
class TestReader(Protocol):
    """reader_test.RecDataset(config, data_dir): one test campaign after another."""

    skipped: List[Tuple[int, str]]  # (aid, why) of the campaigns that are not yielded

    def __len__(self) -> int:
        """Campaigns yielded."""

    def __iter__(self) -> Iterator[Tuple[int, Batch, Batch]]:
        """(aid, seeds, candidates): the campaign's labelled stage-1 rows and the stage-2 rows to score."""


@runtime_checkable
class TrainReaderModule(Protocol):
    RecDataset: Callable[[Mapping, str], TrainReader]


@runtime_checkable
class TestReaderModule(Protocol):
    RecDataset: Callable[[Mapping, str], TestReader]

    def batches(self, batch: Batch, size: int) -> Iterator[Batch]:
        """The batch cut into consecutive batches of `size` rows (fine-tuning and scoring)."""


REQUIRED_HOOKS = ("create_model", "create_feeds", "create_loss", "create_optimizer", "train_forward",
                  "infer_train_forward", "infer_forward")


class Model:
    """A model folder's DygraphModel as the tools call it: ModelHooks as the folder gives them, the optional hooks
    as it gives them or their defaults (trains_across_campaigns True; fit_campaign and campaign_net None:
    fine-tuning, and the fitted net; train_forward None when nothing is trained across campaigns)."""

    def __init__(self, hooks, source):
        """hooks: a DygraphModel; source: its file, for messages."""
        trains = bool(getattr(hooks, "trains_across_campaigns", True))
        problems = [_hook_problem(hooks, name) for name in REQUIRED_HOOKS if trains or name != "train_forward"]
        declared = getattr(hooks, "HYPER_PARAMETERS", None)
        if not isinstance(declared, Mapping):
            problems.append("HYPER_PARAMETERS (key -> (kind, default, meaning)) is missing")
        problems = [p for p in problems if p]
        if problems:
            raise ConfigError(f"{source}: DygraphModel: {'; '.join(problems)}; a model folder gives the hooks of "
                              "tools/utils/run/contract.py (ModelHooks)")
        self.hooks, self.source = hooks, source
        self.HYPER_PARAMETERS = dict(declared)
        self.create_model = hooks.create_model
        self.create_feeds = hooks.create_feeds
        self.create_loss = hooks.create_loss
        self.create_optimizer = hooks.create_optimizer
        self.train_forward = hooks.train_forward if trains else None
        self.infer_train_forward = hooks.infer_train_forward
        self.infer_forward = hooks.infer_forward
        self.trains_across_campaigns = trains
        self.fit_campaign = getattr(hooks, "fit_campaign", None)
        self.campaign_net = getattr(hooks, "campaign_net", None)


def _hook_problem(hooks, name):
    """Why hooks.name cannot be called as ModelHooks.name is, or None."""
    hook = getattr(hooks, name, None)
    if not callable(hook):
        return f"no {name}"
    wanted = list(inspect.signature(getattr(ModelHooks, name)).parameters.values())[1:]
    try:
        inspect.signature(hook).bind(*[p.name for p in wanted if p.default is p.empty],
                                     **{p.name: p.default for p in wanted if p.default is not p.empty})
    except TypeError:
        return f"{name} must take ({', '.join(p.name for p in wanted)})"
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    return None


def require(obj, protocol, source):
    """obj, checked to have every member of a runtime_checkable protocol (a reader or a reader module); a
    ConfigError naming source and what is missing otherwise."""
    if not isinstance(obj, protocol):
        members = [name for name in _members(protocol) if not hasattr(obj, name)]
        raise ConfigError(f"{source}: has no {', '.join(members)}; a reader gives the members of "
                          f"tools/utils/run/contract.py ({protocol.__name__})")
    return obj


def _members(protocol):
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return sorted(names | ({"__len__", "__iter__"} & set(vars(protocol))))


def take_grad_rows(net):
    """net.grad_rows (Network), consumed so that the next meta-step names its own; {} when train_forward left
    none."""
    return net.__dict__.pop("grad_rows", None) or {}
