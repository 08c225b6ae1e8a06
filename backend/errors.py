"""The one exception type for bad user input: its message is a single sentence saying what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user (a path, a value, a file). The CLI prints it and exits with status 2."""


def refuse_first(problems: dict[str, str]) -> None:
    """Raise the first of a check's {field: sentence} problems (a form shows them all, each beside its field; a job
    or command stops at the first); nothing when there is none."""
    for problem in problems.values():
        raise UserError(problem)


def os_error_sentence(exc: OSError) -> str | None:
    """One sentence for the file-system errors a user can fix (full disk, no permission, a file where a folder goes,
    a folder where a file goes); None for the others, which are bugs worth a traceback."""
    import errno

    where = exc.filename or "the output"
    sentences = {
        errno.ENOSPC: f"The disk is full while writing {where}; free some space and run again (files saved earlier "
                      "are intact).",
        errno.EACCES: f"No permission to write {where}; choose a folder you own.",
        errno.EPERM: f"No permission to write {where}; choose a folder you own.",
        errno.EROFS: f"{where} is on a read-only file system; choose another folder.",
        errno.ENOTDIR: f"A part of {where} is a file, not a folder; choose another folder.",
        errno.EISDIR: f"{where} is a folder; give a file name inside it.",
        errno.ENAMETOOLONG: f"The path {where} is too long; choose a shorter name or folder.",
    }
    return sentences.get(exc.errno)
