"""The int8 variant: graph helpers on onnxruntime's OnnxModel (graph.py), the rewrites that make dynamic int8
accurate (rewrites.py), and the calibrated build (build.py)."""
