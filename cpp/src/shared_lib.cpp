// The shared core library (libdlrm_deploy_core.so) is the static core linked whole; this file only
// gives the target a source of its own.
#include "dlrm_deploy/embedding_bag.h"
