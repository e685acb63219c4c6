"""modelrunner.api"""
