/* placeholder: the VHDX log replay lands here */
