"""TODO stamps"""
