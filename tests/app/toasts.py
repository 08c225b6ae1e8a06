"""One message per problem: an action that shows its sentence in a message box raises no toast (gr.Warning, a
UserWarning outside a page) saying it again."""
from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def no_toast():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    toasts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert toasts == [], f"a toast repeats the message box: {toasts}"
