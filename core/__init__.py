"""tenantllm's core. Plugin authors need one import root: `from core import hookimpl, Tenant`.

The long paths keep working (`core.hookspecs.hookimpl`, `core.tenancy.Tenant`,
`core.errors.PromptRejected`); these names are the same objects. Only light modules are
imported here (errors, tenancy, hookspecs: the standard library and pluggy), so importing any
`core.*` module stays as cheap as before. The packages are listed in docs/architecture.md.
"""

from core.errors import PromptRejected
from core.hookspecs import hookimpl
from core.tenancy import PromptDraft, PromptTemplate, Tenant

__all__ = ["PromptDraft", "PromptRejected", "PromptTemplate", "Tenant", "hookimpl"]
