"""modelrunner.cli"""
