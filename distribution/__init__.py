"""modelrunner.distribution"""
