"""Real-component test harness: control plane, MinIO, Kubeflow CRDs, helm."""
