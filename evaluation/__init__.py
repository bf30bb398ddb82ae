"""Gate-1 evaluation through the running service: `python -m evaluation --url URL --out DIR`.

A client of the gateway, never of the models: it generates the seed's synthetic sets (or reads a folder), sends
each input through `POST /reconstruct` for each pipeline, and scores the reconstructions with the lab's metric
definitions (`metrics.py`) against the Gate-1 thresholds (`report.py`).
"""
