"""MetaHeac without meta-learning: MetaHeac's network (the top-level net.py) pre-trained by plain
training on all training campaigns (pretraining.CampaignModel), then fine-tuned per test campaign like
MetaHeac, with MetaHeac's wide part (hyper_parameters.wide_weight), so that only the meta-step differs."""
import dygraph_model as metaheac
from models import pretraining


class DygraphModel(pretraining.CampaignModel):
    HYPER_PARAMETERS = {**pretraining.CampaignModel.HYPER_PARAMETERS, **pretraining.hyper_parameters("wide_weight")}
    create_model = metaheac.DygraphModel.create_model  # MetaHeac's own network and wide part, named here
    campaign_net = metaheac.DygraphModel.campaign_net
