"""MetaHeac without meta-learning: MetaHeac's network (the top-level net.py) pre-trained by plain
training on all training campaigns (common.CampaignModel), then fine-tuned per test campaign like
MetaHeac."""
from models import common


class DygraphModel(common.CampaignModel):
    pass
