# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""What the commands check with the Hugging Face Hub before any work: that an upload can happen (a token, the
network, a repository the token may write or create) and that a model id that is not a local folder can be loaded.
Every refusal is one `UserError` line naming the fix (the token, `HF_HUB_OFFLINE`, the network, the repository id).

`huggingface_hub` is imported inside the functions: the commands' `--help` and their local checks never pay for it.
"""

from .errors import UserError


NETWORK_LIBRARIES = ("httpx", "httpx2", "requests", "urllib3", "socket", "ssl")
TOKEN_FIX = (
    "set HF_TOKEN=hf_... (a token with write access, https://huggingface.co/settings/tokens) or run `hf auth login`"
)


def is_network_error(error: BaseException) -> bool:
    """A failure to reach the Hub (DNS, refused connection, timeout, TLS), whichever HTTP library raised it."""
    return isinstance(error, ConnectionError | TimeoutError) or any(
        cls.__module__.split(".")[0] in NETWORK_LIBRARIES for cls in type(error).__mro__
    )


def describe_hub_error(error: BaseException, action: str) -> str | None:
    """One line for a Hub or network failure while doing `action` ("upload to my-org/x"), naming what to do; None for
    any other error (a bug, which keeps its traceback)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    reason = f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
    if isinstance(error, OfflineModeIsEnabled):
        return f"Cannot {action}: HF_HUB_OFFLINE is set. Unset it (the Hub needs the network) and run again."
    if isinstance(error, GatedRepoError):
        return f"Cannot {action}: the repository is gated. Accept its terms on the Hub, and {TOKEN_FIX}."
    if isinstance(error, RepositoryNotFoundError):
        return f"Cannot {action}: no such repository, or a private one the token may not read; {TOKEN_FIX}."
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status is not None:
        if status == 401:
            return f"Cannot {action}: the Hugging Face token is invalid or expired; {TOKEN_FIX}."
        if status == 403:
            return f"Cannot {action}: the token may not do this (a read-only token, or no rights there); {TOKEN_FIX}."
        return f"Cannot {action}: the Hub answered {reason}. Run again later."
    if is_network_error(error):
        return f"Cannot {action}: the Hub cannot be reached ({reason}). Check the network (or HTTPS_PROXY), run again."
    return None


def check_hub_upload(repo_id: str, flag: str, ask_the_hub: bool = True, instead: str = "") -> None:
    """Before any work: `repo_id` is a repository id, `HF_HUB_OFFLINE` is not set, a token is there, and (with
    `ask_the_hub`) the Hub confirms that its user may write to `repo_id` or create it (whoami, then auth-check).
    `instead` ends the offline message with the way to go on without uploading ("or leave out --push_to_hub ...")."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(
            f"{flag} {repo_id} is not a Hub repository id ({error}); write it as user-or-org/name."
        ) from None
    if constants.is_offline_mode():
        raise UserError(f"{flag} {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it{instead}.")
    if get_token() is None:
        raise UserError(f"{flag} {repo_id}: no Hugging Face token to upload with; {TOKEN_FIX}.")
    if not ask_the_hub:
        return
    api = HfApi()
    action = f"upload to {repo_id}"
    try:
        user = api.whoami()
        role = user.get("auth", {}).get("accessToken", {}).get("role")
        if role == "read":
            raise UserError(f"{flag} {repo_id}: the token of {user['name']} is read-only; {TOKEN_FIX}.")
        try:
            api.auth_check(repo_id, write=True)
        except RepositoryNotFoundError:  # not there yet (or hidden from this user): it must be creatable
            check_creatable(repo_id, user, flag)
    except UserError:
        raise
    except Exception as error:
        message = describe_hub_error(error, action)
        if message is None:
            raise
        raise UserError(message) from None


def check_creatable(repo_id: str, user: dict, flag: str) -> None:
    """A new repository goes under the token's user or one of its organisations."""
    namespace = repo_id.split("/")[0] if "/" in repo_id else user["name"]
    organisations = [organisation["name"] for organisation in user.get("orgs", [])]
    if namespace not in (user["name"], *organisations):
        owners = ", ".join([user["name"], *organisations])
        raise UserError(
            f"{flag} {repo_id}: {user['name']} cannot create a repository under {namespace!r} (it may under: "
            f"{owners}). Use one of those, or a token of a member of that organisation."
        )


def check_hub_model(model_id: str, flag: str, expected: str) -> None:
    """A model name that is not a local folder must be a Hub model id that can be loaded: in the local cache, or, when
    online, found on the Hub with a config.json. `flag` and `expected` as in `checks.check_model_path`."""
    from huggingface_hub import constants, file_exists, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    subject, local = f"{flag} {model_id}".strip(), f"Give {expected} or a Hub model id"
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise UserError(f"{subject}: no such folder, and not a Hub model id either. {local}.") from None
    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    if constants.is_offline_mode():
        raise UserError(
            f"{subject}: no such folder, and HF_HUB_OFFLINE is set while the Hub model {model_id!r} is not in "
            f"the local cache. {local}, or unset HF_HUB_OFFLINE to download it."
        )
    try:
        found = file_exists(model_id, "config.json")
    except Exception as error:
        message = describe_hub_error(error, f"look up the Hub model {model_id!r}")
        if message is None:
            raise
        raise UserError(f"{subject}: no such folder. {message}") from None
    if not found:
        raise UserError(
            f"{subject}: no such folder, and no Hub model {model_id!r} with a config.json (none by that name, "
            f"or a private one: set HF_TOKEN). {local}."
        )
