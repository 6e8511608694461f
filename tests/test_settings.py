from pathlib import Path

import pytest

from service.settings import DEFAULT_ALLOWED_MODELS, SettingsError, load_settings

NO_DOTENV = Path("/nonexistent/.env")


def test_defaults_mean_embedded_database_and_emulator() -> None:
    settings = load_settings({}, dotenv=NO_DOTENV)
    assert settings.database_url is None
    assert settings.uses_emulator
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8000, "INFO")
    assert settings.allowed_models == DEFAULT_ALLOWED_MODELS
    assert len(settings.stream_token_secret) >= 32


def test_values_are_read_and_next_public_app_url_is_an_alias() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://u:p@db:5432/x",
            "NEXT_PUBLIC_APP_URL": "https://jobs.example.com/",
            "FAL_KEY": "k",
            "PORT": "9000",
            "LOG_LEVEL": "debug",
            "ALLOWED_MODELS": "fal-ai/flux/dev, fal-ai/minimax/video-01",
        },
        dotenv=NO_DOTENV,
    )
    assert settings.app_url == "https://jobs.example.com"
    assert settings.port == 9000 and settings.log_level == "DEBUG"
    assert settings.allowed_models == ("fal-ai/flux/dev", "fal-ai/minimax/video-01")
    assert not settings.uses_emulator


def test_app_url_wins_over_its_alias() -> None:
    settings = load_settings({"APP_URL": "https://a.example", "NEXT_PUBLIC_APP_URL": "https://b.example"}, dotenv=NO_DOTENV)
    assert settings.app_url == "https://a.example"


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "eighty"), ("PORT", "70000"), ("LOG_LEVEL", "LOUD"), ("APP_URL", "localhost:3000"),
     ("FAL_QUEUE_URL", "ftp://x"), ("FAL_JWKS_URL", "nope"), ("STREAM_TOKEN_SECRET", "short")],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}:"):
        load_settings({name: value}, dotenv=NO_DOTENV)


def test_a_bad_database_url_is_named_without_echoing_its_password() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"DATABASE_URL": "mysql://root:hunter2@db/x"}, dotenv=NO_DOTENV)
    assert str(raised.value).startswith("DATABASE_URL:")
    assert "hunter2" not in str(raised.value)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# local\nexport PORT=8123\nLOG_LEVEL='warning'\nAPP_URL=\"https://x.example\"\n")
    settings = load_settings({"PORT": "8124"}, dotenv=dotenv)
    assert settings.port == 8124
    assert settings.log_level == "WARNING"
    assert settings.app_url == "https://x.example"


def test_a_malformed_dotenv_line_is_named(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=1\njust words\n")
    with pytest.raises(SettingsError, match="line 2"):
        load_settings({}, dotenv=dotenv)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5"])
@pytest.mark.parametrize("name", ["RECONCILE_INTERVAL_S", "SSE_HEARTBEAT_S", "MAX_FOLLOWERS"])
def test_numbers_must_be_finite_and_positive(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: must be a"):
        load_settings({name: value}, dotenv=NO_DOTENV)


def test_every_field_is_read_from_its_upper_case_name() -> None:
    settings = load_settings({"MAX_FOLLOWERS": "7", "RECONCILE_AFTER_S": "1.5", "EMBEDDED_PGDATA": "/x"},
                             dotenv=NO_DOTENV)
    assert (settings.max_followers, settings.reconcile_after_s, settings.embedded_pgdata) == (7, 1.5, "/x")


def test_a_bad_alias_is_named_as_the_alias() -> None:
    with pytest.raises(SettingsError, match=r"^NEXT_PUBLIC_APP_URL: must be an http"):
        load_settings({"NEXT_PUBLIC_APP_URL": "nope"}, dotenv=NO_DOTENV)


def test_flags_and_choices_name_what_they_take() -> None:
    assert load_settings({"FAL_EMULATOR": "1", "EMULATOR_PACE": "demo"}, dotenv=NO_DOTENV).fal_emulator
    with pytest.raises(SettingsError, match=r"^FAL_EMULATOR: must be 1 or 0"):
        load_settings({"FAL_EMULATOR": "yes please"}, dotenv=NO_DOTENV)
    with pytest.raises(SettingsError, match=r"^EMULATOR_PACE: must be fast or demo"):
        load_settings({"EMULATOR_PACE": "slow"}, dotenv=NO_DOTENV)


@pytest.mark.parametrize(
    ("env", "cores", "expected"),
    [({}, 2, 1), ({}, 16, 8), ({"DATABASE_URL": "postgresql://db.internal/x"}, 4, 4),
     ({"DATABASE_URL": "postgresql://127.0.0.1/x"}, 4, 2), ({"DATABASE_URL": "postgresql://db.internal/x"}, 32, 8),
     ({"WEB_CONCURRENCY": "3"}, 2, 3)],
)
def test_process_count_defaults_to_the_cores_postgres_leaves(
    env: dict[str, str], cores: int, expected: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service import serving

    monkeypatch.setattr(serving, "usable_cores", lambda: cores)
    assert serving.process_count(load_settings(env, dotenv=NO_DOTENV)) == expected
