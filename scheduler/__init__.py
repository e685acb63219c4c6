"""modelrunner.scheduler"""
