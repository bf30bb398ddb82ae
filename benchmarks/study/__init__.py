"""The lab's E-P2.6 study, `python -m benchmarks.study run|merge` (`--help` says what each part measures).

- `settings`: what one run measures (StudySettings), the names it uses and the results' JSON entries;
- `models`: the serving models in process: per-component latency and memory, the memory table, fusion pruning;
- `served`: through gateway + Triton: the response cache and the paired overhead per DINOv2 variant;
- `report`: partial runs merged into `e-p2-6-study.{json,md}`, the charts and the recommended configuration;
- `cli`: the command line and the run that saves a partial JSON after every step.
"""
