"""The lab's web app, served by the hub under ``/`` with the same sign-in as the API: the
researcher's, steward's, auditor's and operator's workspaces, server-rendered (Jinja2),
with Plotly charts drawn from the released results (its JavaScript from its Python
package; nothing is fetched from anywhere else)."""

from medlab.web.app import install
from medlab.web.base import is_page

__all__ = ["install", "is_page"]
