"""MetaHeac without meta-learning: MetaHeac's network (the top-level net.py) pre-trained by plain
training on all training campaigns (pretraining.CampaignModel), then fine-tuned per test campaign like
MetaHeac."""
from models import pretraining


class DygraphModel(pretraining.CampaignModel):
    pass
