"""modelrunner.sandbox"""
