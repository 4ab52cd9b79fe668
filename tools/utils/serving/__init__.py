"""Expanding a campaign and serving it (tools/expand.py, tools/score.py): the campaign's seeds and the pool read
and encoded (expansion), the expansion's quality estimated on the seeds (quality), the adapted model exported for
Paddle Inference and scored through the shipped encoder (exported, export_net), and outputs that land together
(outputs).

Imports the base modules of tools/utils and the data, measure and run packages; export_net reads MetaHeac's
net.py."""
