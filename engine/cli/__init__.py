"""`walkbook` command line: a thin click layer over the library.

Modules import downward only: `app` registers the commands (`run`, `status`, `stop`,
`audit`, `simserver`), which share `exits`, `output`, `options`, `brokers`, `engines`,
`progress` and `signals`; none of those imports a command. Exit codes: see `exits`.
"""

from .app import main

__all__ = ["main"]
