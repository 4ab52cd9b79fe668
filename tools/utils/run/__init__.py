"""Running a model folder: its config and run spec (config), the folder itself and what the tools may call of it
(model_folder, contract), meta-training (training, checkpoint, run_folder, validation, resources), loading a
trained model (trained) and the test protocol of one campaign (campaign), in one process or across processes
(distributed, collectives, store_channel).

Imports the base modules of tools/utils, the data and measure packages, and Paddle through paddle_env."""
