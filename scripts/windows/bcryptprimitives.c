/* Test-only stand-in for Windows' bcryptprimitives.dll, for the Wine harness
 * (scripts/windows-check.sh) and never shipped: Rust's standard library imports ProcessPrng from
 * it (Windows 10 and later), and Wine 8 (Debian 12's) has no such DLL, so every Rust .exe fails to
 * start there with status c0000135. Built into the system32 of the harness's own Wine prefix,
 * this one answers ProcessPrng from RtlGenRandom (advapi32's SystemFunction036), which Wine has.
 * Real Windows has the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG n = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
