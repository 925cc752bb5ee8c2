"""How a step asks for a GPU: the `gpu` pool (concurrency), a tag, and op tags that the
dagster-k8s run launcher / executor turns into a pod GPU request."""

GPU_POOL = "gpu"
GPU_TAGS = {"pbi/accelerator": "gpu"}
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
    }
}
