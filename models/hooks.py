"""The model hooks every baseline shares: MetaHeac's feeds, loss and optimiser (the functions of the top-level
dygraph_model.py, not its class), fine-tuning and scoring steps. A baseline subclasses PerCampaignHooks, so
what MetaHeac adds to its own hooks (its meta-step, its wide part) never reaches the baselines."""
import dygraph_model as metaheac


class PerCampaignHooks:
    """Holds no state; tools/trainer.py and tools/infer_meta.py call these. A subclass gives create_model and
    HYPER_PARAMETERS, and train_forward when it trains across campaigns (trains_across_campaigns)."""

    def create_feeds(self, batch):
        return metaheac.create_feeds(batch)

    def create_loss(self, pred, label, weight=None):
        return metaheac.bce(pred, label, weight)

    def create_optimizer(self, net, config, learning_rate=None):
        return metaheac.optimizer(net, config, learning_rate)

    def infer_train_forward(self, net, batch, config):
        return metaheac.infer_train_forward(net, batch)

    def infer_forward(self, net, batch, config):
        return metaheac.infer_forward(net, batch)
