"""Reading and writing data: the data folders' .npz format and schema.json (dataset, schema), the raw-id maps
(vocabulary), the competition's raw files (raw, raw_csv, raw_users, raw_text), the synthetic data (synthetic),
the published pickles (safe_pickle) and the sample of training users a checkpoint carries (background).

Imports NumPy and the base modules of tools/utils (errors, files, progress) only; the readers of a model folder
import dataset alone (docs/architecture.md)."""
