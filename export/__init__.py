"""Builds deployable artifacts from `hybrid/`: the Triton model repository of each target (`export.repository`,
`export.targets`), ONNX exports with parity checks (`export.onnx_export`), TensorRT engines
(`export.tensorrt_engine`) and the measured results under export/results/ (`export.measure`)."""
