"""autotimm_deploy.engines"""
