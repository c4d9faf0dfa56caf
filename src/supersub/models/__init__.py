"""supersub.models"""
