from modelguard.cli import entry_point

entry_point()
