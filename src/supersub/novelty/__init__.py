"""supersub.novelty"""
