import tierwise


def test_all_is_complete_and_sorted() -> None:
    public = {n for n in dir(tierwise) if not n.startswith("_")}
    modules = {
        "errors",
        "policy",
        "predict",
        "registry",
        "router",
        "cli",
        "eval",
        "providers",
        "validators",
        "cascade",
        "state",
        "executor",
        "testing",
        "replay",
        "workflow",
        "server",
        "ledger",
        "cache",
        "telemetry",
        "chat",
    }
    assert set(tierwise.__all__) == public - modules
    assert tierwise.__all__ == sorted(tierwise.__all__)
