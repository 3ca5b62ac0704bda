"""The student leaves: ONNX/int8 export, CPU latency, the deployment report."""
