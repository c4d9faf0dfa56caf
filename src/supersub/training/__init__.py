"""supersub.training"""
