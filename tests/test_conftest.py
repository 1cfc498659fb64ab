"""The test session's own environment (tests/conftest.py): a developer's Prefect never receives test runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a fresh test session sees: conftest loaded first (as pytest does), then Prefect's settings.
PROBE = """
import json, os
import tests.conftest
from prefect.settings import get_current_settings
s = get_current_settings()
print(json.dumps({"url": s.api.url, "key": s.api.key is not None, "home": str(s.home),
                  "env": sorted(k for k in os.environ if k.startswith("PREFECT_API"))}))
"""


def test_a_developers_prefect_settings_do_not_reach_the_test_session(tmp_path):
    """A session started from a shell whose Prefect points at the developer's server (by environment,
    and by the active profile of their PREFECT_HOME) uses neither; with SHADOWFT_TEST_OWN_PREFECT=1 it
    keeps them."""
    url = "http://127.0.0.1:9/api"
    home = tmp_path / "own-prefect"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{url}"\n')
    shell = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}

    def probe(**env: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env={**shell, **env}, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1])

    isolated = probe(PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_API_KEY="secret")
    assert isolated["url"] is None and not isolated["key"] and isolated["env"] == [], isolated
    assert Path(isolated["home"]) != home and not Path(isolated["home"]).exists()  # removed at exit
    kept = probe(PREFECT_HOME=str(home), SHADOWFT_TEST_OWN_PREFECT="1")  # the profile alone names the server
    assert kept["url"] == url and Path(kept["home"]) == home, kept
