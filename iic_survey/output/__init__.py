"""TODO output"""
