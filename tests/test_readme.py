"""The README documents every configuration key and the two commands."""

from pydantic import BaseModel

from bot.config import ROOT, Config


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += key_paths(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_config_key_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [k for k in key_paths(Config) if f"`{k}`" not in readme]
    assert not missing, f"run `make docs` to document: {missing}"


def test_readme_shows_run_and_test_first() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.index("make run") < readme.index("make test") < readme.index("## Production")
    assert "中文快速开始" in readme
