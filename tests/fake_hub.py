"""A stand-in for the Hugging Face Hub in tests, without the network: `huggingface_hub.HfApi` answers as the Hub
would for the user `me` (member of `my-org`) and records what an upload would send."""

import importlib

import huggingface_hub
import huggingface_hub.errors
import pytest
from huggingface_hub.utils import filter_repo_objects

import caev2_hf.hub.publish
from caev2_hf_cli.hub import list_folder_files


def hub_error(error_class: type, status: int, message: str = "refused") -> Exception:
    """An error of `huggingface_hub` as its HTTP layer raises it, with a response of `status`."""
    http = importlib.import_module(huggingface_hub.errors.Response.__module__.split(".")[0])  # the library it uses
    response = http.Response(status, request=http.Request("GET", "https://huggingface.co/api/whoami-v2"))
    return error_class(message, response=response)


class FakeHfApi:
    """`HfApi` for the user `me`: `existing` repositories (id -> whether `me` may write it), a `role` for the token,
    `calls` in order; `upload_folder` records the files it would send (its `allow_patterns` applied by
    huggingface_hub's own filter) and fails with `upload_error` when one is set."""

    calls: list = []
    existing: dict = {}
    role = "write"
    upload_error: Exception | None = None

    def __init__(self, token: str | None = None, **kwargs) -> None:
        self.calls.append(("init", {"token": token}))

    def whoami(self, **kwargs) -> dict:
        self.calls.append(("whoami", {}))
        return {"name": "me", "orgs": [{"name": "my-org"}], "auth": {"accessToken": {"role": self.role}}}

    def auth_check(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("auth_check", {"repo_id": repo_id, **kwargs}))
        if repo_id not in self.existing:
            raise hub_error(huggingface_hub.errors.RepositoryNotFoundError, 404, "Repository Not Found")
        if not self.existing[repo_id]:
            raise hub_error(huggingface_hub.errors.HfHubHTTPError, 403, "Forbidden")

    def create_repo(self, **kwargs) -> None:
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, *, folder_path, allow_patterns=None, **kwargs) -> str:
        files = sorted(filter_repo_objects(list_folder_files(folder_path), allow_patterns=allow_patterns))
        self.calls.append(("upload_folder", {"folder_path": str(folder_path), "files": files, **kwargs}))
        if self.upload_error is not None:
            raise self.upload_error
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"

    @classmethod
    def named(cls, name: str) -> list[dict]:
        return [arguments for call, arguments in cls.calls if call == name]


def install_fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeHfApi]:
    """Online (HF_HUB_OFFLINE off), a token in HF_TOKEN, and `FakeHfApi` wherever our code asks the Hub; a test
    file's `fake_hub` fixture returns this."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(caev2_hf.hub.publish, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "existing", {})
    monkeypatch.setattr(FakeHfApi, "role", "write")
    monkeypatch.setattr(FakeHfApi, "upload_error", None)
    return FakeHfApi
