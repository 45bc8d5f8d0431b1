"""Entry point: `python app.py` starts tenantllm exactly like `tenantllm serve`.

The `__main__` guard matters: vLLM's engine core is a spawned process that re-imports this
module, and it must not start a second server.
"""

from core.cli import main

if __name__ == "__main__":
    main(["serve"])
