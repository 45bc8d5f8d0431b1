"""Every setting is documented in the README, and the README's first screen is right."""

from pathlib import Path

from core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [
        name for name in Settings.model_fields if f"`TENANTLLM_{name.upper()}`" not in README
    ]
    assert missing == [], f"settings missing from README: {missing}"


def test_readme_first_screen_shows_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:12])
    assert "make run" in first_screen
    assert "make test" in first_screen
