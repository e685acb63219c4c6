"""modelrunner.engines"""
