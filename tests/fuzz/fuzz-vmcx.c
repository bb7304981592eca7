/* libFuzzer target: Hyper-V 2016+ .vmcx configurations
 * (core/vmcx.c, then core/hyperv.c and the chains it opens);
 * see fuzz-vm.c. */
#include "fuzz.h"
#include "hyperv.h"

void fuzz_vm_setup (const char *fixture);
void fuzz_vm_one (const uint8_t *data, size_t size, enum cfg_format fmt);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_vm_setup ("vmcx");
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size <= VM_MAX_CONFIG_SIZE)
    fuzz_vm_one (data, size, CFG_VMCX);
  return 0;
}
