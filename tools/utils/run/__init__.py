"""Running a model folder: its config (config), the folder itself (model_folder), meta-training (training,
checkpoint, run_folder, validation, resources) and the test protocol of one campaign (campaign), in one process
or across processes (distributed, collectives, store_channel).

Imports the base modules of tools/utils, the data and measure packages, and Paddle through paddle_env."""
