"""How a step asks for a GPU: the `gpu` pool (concurrency) and a tag (its pod's GPU request is
in its op tags, pbi_assets.execution.stage_op_tags)."""

GPU_POOL = "gpu"
GPU_TAGS = {"pbi/accelerator": "gpu"}
