"""The runtime fails closed on a broken system layer and follows edits of a good one.

Each test failed before issue 8: a dangling system policy path was skipped silently (and the
bundled default used), and a PolicyContext held by a running application never noticed an
edit of its system files.
"""

from __future__ import annotations

import os

import pytest

import taps_post as tp


def test_a_broken_system_layer_is_a_policy_error_for_initiate(run, store, tmp_path,
                                                               monkeypatch) -> None:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(tmp_path))

    async def main() -> None:
        with pytest.raises(tp.PolicyError, match="system policy cannot be loaded") as info:
            await tp.initiate("tcp://127.0.0.1:9", app_name="a", store=store)
        assert info.value.decision is None
        assert isinstance(info.value.__cause__, tp.SystemPolicyError)
        assert "gone.yaml" in str(info.value)

    run(main())


def test_a_held_context_follows_an_edit_of_the_system_policy(run, store, tmp_path,
                                                             monkeypatch) -> None:
    policy_file = tmp_path / "system.yaml"
    policy_file.write_text("version: 1\nlayer: system\nrules: []\n", encoding="utf-8")
    os.chmod(policy_file, 0o644)
    os.chmod(tmp_path, 0o755)
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(policy_file))
    ctx = tp.PolicyContext(app_name="held")  # the discovered (live) system layer

    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"tcp://127.0.0.1:{responder.ports['tcp']}"
            async with await tp.initiate(target, policy=ctx, store=store) as carrier:
                assert carrier.stack == "tcp"
            edited = tmp_path / "system.yaml.new"
            edited.write_text(
                "version: 1\nlayer: system\nrules:\n  - id: no-loopback\n"
                "    enforce: true\n    set: {interface.lo: prohibit}\n", encoding="utf-8")
            os.chmod(edited, 0o644)
            os.replace(edited, policy_file)  # an editor's atomic save
            with pytest.raises(tp.PolicyError) as info:
                await tp.initiate(target, policy=ctx, store=store)
            assert info.value.decision is not None
            assert any("no-loopback" in str(e.to_dict()) for e in info.value.decision.excluded)

    run(main())
