"""Real test plugins: modules loaded by name, and an installable package (tenantllm_acme)."""
