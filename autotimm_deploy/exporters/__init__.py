"""autotimm_deploy.exporters"""
