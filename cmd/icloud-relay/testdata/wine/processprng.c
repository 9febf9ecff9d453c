/*
 * bcryptprimitives.dll with the one function Go's Windows runtime needs.
 *
 * Go 1.24 and later get their random numbers from ProcessPrng in
 * bcryptprimitives.dll. Debian 12's Wine (8.0) has no such DLL, so a Go
 * windows/amd64 program dies at start under it ("bcryptprimitives.dll not
 * found"). The Wine test (wine_test.go) builds this file with Debian's
 * mingw-w64 into its Wine prefix's system32, so that the Windows build
 * can be run there (bcryptprimitives.def names the export).
 *
 * ProcessPrng fills the buffer from RtlGenRandom (advapi32's
 * SystemFunction036), which Wine has. Delete this directory, and the
 * DLL step of wine_test.go, once Debian's Wine ships ProcessPrng.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
	while (len > 0) {
		ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
		if (!SystemFunction036(data, chunk))
			return FALSE;
		data += chunk;
		len -= chunk;
	}
	return TRUE;
}
