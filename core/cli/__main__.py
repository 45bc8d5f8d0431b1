"""`python -m core.cli ...` is the same as `tenantllm ...`."""

from core.cli import main

if __name__ == "__main__":
    main()
