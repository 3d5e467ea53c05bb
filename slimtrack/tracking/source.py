"""Source tags: who started a run, with which command, from which git commit.

``source_tags`` sets ``mlflow.user``, ``mlflow.source.*`` and the git commit, as MLflow's
fluent API does for a run it starts. A tracked run resolves them in the MLflow process
(``SinkProcess.source_tags``), so the training process does not import MLflow for them.
"""

from __future__ import annotations

MAX_SOURCE_NAME = 500  # characters of the command line kept as the source name


def source_tags(argv: list[str], cwd: str) -> dict[str, str]:
    """The tags for a run started by the command ``argv`` in the folder ``cwd``. The commit
    is that of ``cwd`` when it is a git checkout (the user's project), else that of
    slimtrack's source when it runs from one. ``mlflow run`` sets its own: callers attached
    to its run skip these."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

    tags = {key: str(value) for key, value in resolve_tags({}).items()}
    tags[MLFLOW_SOURCE_NAME] = " ".join(["slimtrack", *argv[1:]])[:MAX_SOURCE_NAME]
    if commit := get_git_commit(cwd):  # the user's checkout before slimtrack's own source
        tags[MLFLOW_GIT_COMMIT] = commit
        for key, value in ((MLFLOW_GIT_BRANCH, get_git_branch(cwd)), (MLFLOW_GIT_REPO_URL, get_git_repo_url(cwd))):
            if value:
                tags[key] = value
    return tags
