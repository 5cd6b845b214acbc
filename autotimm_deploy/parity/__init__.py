"""autotimm_deploy.parity"""
