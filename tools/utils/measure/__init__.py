"""Measuring: the exact metrics (metrics), the training curves (curves), the gates of a MetaHeac checkpoint
(gates), and the charts and tables of the tools' reports (charts, benchmark_report).

Imports NumPy, scikit-learn, matplotlib where installed, and the base modules of tools/utils only (gates reads
MetaHeac's net.py)."""
